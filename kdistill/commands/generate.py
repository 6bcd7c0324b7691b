"""`kdistill generate`: complete prompts with a model folder, an int8/int4 export or a .gguf file.

    kdistill generate --model runs/demo/student-q8_0.gguf --chat "What is the capital of France?"
"""
from __future__ import annotations

from kdistill import api


def main(args) -> int:
    for text in api.generate(args.model, args.prompt, args.max_new_tokens, args.temperature, chat=args.chat):
        print(text)
    return 0
