"""A LLaMA student built around its own tokenizer (`student.tokenizer`), not the teacher's.

Its vocabulary, BOS/EOS/PAD ids and embedding rows are the tokenizer's. Layers are chosen and copied from
the teacher as usual (they do not depend on the vocabulary); the embeddings start fresh, and with
`student.init=teacher` the rows of strings both tokenizers have are the teacher's rows of those strings
(projected onto the student's width when it is narrower; the cross-tokenizer source copies them when it
attaches, `copy_matching_embeddings`), the other rows stay fresh.
"""
from __future__ import annotations

import torch

from kdistill.models.heads import count_parameters
from kdistill.students.init import project_embeddings


def use_tokenizer(student, tokenizer, fresh: torch.Tensor) -> dict:
    """Put back the fresh embedding rows (a copy by id means nothing across tokenizers) and the
    tokenizer's special ids. Shapes: fresh (V, D) the embedding as initialised"""
    with torch.no_grad():
        student.get_input_embeddings().weight.copy_(fresh)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        setattr(student.config, name, value)
        if getattr(student, "generation_config", None) is not None:
            setattr(student.generation_config, name, value)
    return {"tokenizer": getattr(tokenizer, "name_or_path", "") or "student.tokenizer",
            "vocab_size": int(fresh.shape[0]), "parameters": count_parameters(student),
            "embeddings": "fresh (the student's own tokenizer); rows of matching strings from the teacher "
                          "with student.init=teacher"}


@torch.no_grad()
def copy_matching_embeddings(student, teacher, student_ids: torch.Tensor, teacher_ids: torch.Tensor) -> int:
    """Student rows `student_ids` := the teacher's rows `teacher_ids` (projected if widths differ).

    Returns how many rows were copied. Shapes: student_ids (M,), teacher_ids (M,)
    """
    s_emb = student.get_input_embeddings().weight
    t_emb = teacher.get_input_embeddings().weight.detach().float()
    keep = (student_ids < s_emb.shape[0]) & (teacher_ids < t_emb.shape[0])
    s_ids, t_ids = student_ids[keep].to(s_emb.device), teacher_ids[keep].to(t_emb.device)
    rows = t_emb if t_emb.shape[1] == s_emb.shape[1] else project_embeddings(t_emb, s_emb.shape[1])
    s_emb[s_ids] = rows[t_ids].to(s_emb.device, s_emb.dtype)
    return int(keep.sum())
