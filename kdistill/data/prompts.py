"""The built-in prompt set the teacher continues when the user gives no data.

Plain prompts are continued as text (the seed's "Once upon a time" style); chat prompts are sent
through the tokenizer's chat template so an instruction-tuned teacher answers as it was trained to.
"""

PLAIN = [
    # stories
    "Once upon a time", "The king said", "In the beginning", "Long ago, in a small village by the sea,",
    "The old lighthouse keeper looked at the storm and", "She opened the letter and read the first line:",
    "When the dragon woke up,", "The children ran into the garden because",
    "It was the last day of summer, and", "The detective studied the footprints and said",
    # facts
    "The capital of France is", "Water is made of", "The Sun is a star that", "Photosynthesis is the process",
    "The human heart has four chambers:", "The Pacific Ocean is", "Mount Everest is the highest",
    "Electricity flows through a wire when", "The first computers were", "Honey bees live in colonies that",
    # how-to
    "To bake a loaf of bread, first", "Here is how to plant a tree:", "The best way to learn a language is",
    "To fix a flat bicycle tyre, you need", "A good morning routine starts with",
    # code
    "def fibonacci(n):", "# Python function that reverses a string\ndef", "import numpy as np\n\n# Compute the mean",
    "for i in range(10):", "SELECT name, age FROM users WHERE",
    # questions and dialogue
    "Question: Why is the sky blue?\nAnswer:", "Question: What is the largest planet?\nAnswer:",
    "Q: How many days are in a leap year?\nA:", "Teacher: What is two plus two?\nStudent:",
]

CHAT = [
    "Write a short story about a robot who learns to paint.",
    "Explain how rain forms, in simple words.",
    "Give three tips for staying focused while studying.",
    "What is the difference between a virus and a bacterium?",
    "Write a Python function that checks whether a number is prime.",
    "Describe the city of Paris in four sentences.",
    "How do I make a cup of green tea?",
    "Summarise the story of Cinderella.",
    "Why do we have seasons on Earth?",
    "Write a friendly email inviting a colleague to lunch.",
    "List five animals that live in the ocean and one fact about each.",
    "What are the main causes of the French Revolution?",
    "Explain what a neural network is to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "How does a refrigerator keep food cold?",
    "Give me a recipe for a simple tomato soup.",
]
