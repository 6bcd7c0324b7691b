"""A tiny teacher whose dropped layers matter and a student copied from some of its layers, shared by the
repair and span-fit tests, with rows of ids and the held-out KL between the two."""
import torch
from helpers import tiny_llama

from kdistill.students.init import init_from_teacher

VOCAB = 80


def rows(seed: int, b: int = 6, t: int = 24) -> dict:
    g = torch.Generator().manual_seed(seed)
    am = torch.ones(b, t, dtype=torch.long)
    am[1, 17:] = 0
    return {"input_ids": torch.randint(3, VOCAB, (b, t), generator=g), "attention_mask": am, "mask": am.bool()}


def teacher_and_copy(keep=(0, 5)):
    """A 6-layer teacher with weights large enough that dropping four layers costs visible KL, and a
    student copied from `keep`."""
    teacher = tiny_llama(VOCAB, num_hidden_layers=6)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(2.5) if p.dim() == 2 else None
    student = tiny_llama(VOCAB, seed=1, num_hidden_layers=len(keep))
    init_from_teacher(student, teacher, list(keep))
    return teacher, student


@torch.no_grad()
def heldout_kl(student, teacher, batch) -> float:
    t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1)[batch["mask"]].mean().item()
