"""Losses across tokenizers: the teacher reads the text through another tokenizer than the student's.

Files: alignment (byte-offset token groups, vocabulary entries paired by string; pure functions),
groups (`CrossSignal`, group distributions, `uld` and `hybrid`: a value per group, reduced by the count
of student tokens), objective (`cross_loss`: chunks of whole groups through the fused output layer).
"""
from kdistill.losses.cross.groups import KINDS, CrossSignal, token_level

__all__ = ["KINDS", "CrossSignal", "token_level"]
