"""The built-in prompt set the teacher continues when the user gives no data.

Plain prompts are continued as text (the seed's "Once upon a time" style); chat prompts are sent
through the tokenizer's chat template so an instruction-tuned teacher answers as it was trained to.
Both sets mix stories, how-to, code and dialogue with questions of fact (places, people, science,
words, numbers), so the student sees the teacher recall what it knows, not only write fluent text.
`teacher_written.prompt_texts` draws them 2 plain : 1 chat, every prompt once before any repeats.
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
    # places
    "Tokyo is the capital of Japan, a country", "The river Nile flows through", "Canada is a large country in",
    "The largest city in Australia is", "Brazil, the biggest country in South America,",
    "The Great Wall of China was built", "In Egypt, the pyramids of Giza", "Germany shares borders with",
    "The official language of Mexico is", "Iceland is an island nation where",
    # people and history
    "Albert Einstein is famous for", "William Shakespeare wrote plays such as", "The Roman Empire began",
    "Marie Curie was the first person to", "The Second World War ended in", "Leonardo da Vinci painted",
    # science and nature
    "The boiling point of water at sea level is", "Plants need sunlight, water and", "The Moon orbits the Earth",
    "Dolphins are mammals, which means", "An atom is made of", "Gravity is the force that",
    # words and numbers
    "The opposite of hot is cold, and the opposite of fast is", "The plural of mouse is",
    "A synonym for happy is", "Twelve times twelve equals", "The word 'bicycle' has", "A triangle has three sides, a square has",
    # everyday life
    "At the market, the farmer sold", "My grandmother's favourite recipe is", "The train to London was late because",
    "Dear diary, today I",
    # code and dialogue
    "class Stack:\n    def __init__(self):", "// JavaScript: add two numbers\nfunction add(a, b) {",
    "Q: What is the chemical symbol for gold?\nA:", "Question: Who wrote Romeo and Juliet?\nAnswer:",
    "Customer: Hello, I would like to return these shoes.\nShop assistant:",
    "Interviewer: What do you enjoy most about your job?\nNurse:",
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
    "Name the capitals of five European countries.",
    "What is the tallest mountain in Africa, and where is it?",
    "Which planets in our solar system have rings?",
    "Who was Nelson Mandela?",
    "What language is spoken in Brazil, and why?",
    "Explain the difference between weather and climate.",
    "What does the heart do in the human body?",
    "Give the past tense of these verbs: go, eat, swim, write.",
    "What are three famous landmarks in Italy?",
    "Convert 5 kilometres to miles and explain how.",
    "Write a SQL query that counts the orders of each customer.",
    "Tell me a short fable with a moral.",
    "What is the difference between an island and a peninsula?",
    "Describe how a bill becomes a law in simple terms.",
    "What do bees and butterflies have in common?",
    "Write a short poem about the ocean.",
]
