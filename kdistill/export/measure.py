"""How much an export costs: KL to the float student on held-out text, top-1 agreement, bytes saved.

KL(fp || q) is taken per token at temperature 1 with the float student as the reference distribution
(the quantised model is the one that approximates it), in fp32, and averaged over the held-out tokens.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F

from kdistill.base.errors import DataError, ModelError

# Held-out text for when the user gives none: plain prose and a little code, written for kdistill.
HELD_OUT_TEXT = """\
The lighthouse keeper climbed the narrow stairs every evening, counting the steps as his father had
done before him. At the top he trimmed the wick, polished the great lens and watched the first ships
turn toward the harbour. On calm nights the sea was silver; on stormy ones it threw spray against the
glass, and he would sit with a cup of tea and listen to the wind searching the rocks below.

A recipe for a simple soup: chop two onions, three carrots and a stick of celery. Soften them in butter
for ten minutes, add a litre of stock and a handful of lentils, and simmer until the lentils are soft.
Season with salt, pepper and a squeeze of lemon, then blend half of it for a thicker texture.

def mean(values):
    if not values:
        return 0.0
    return sum(values) / len(values)

Questions people often ask: why is the sky blue? Sunlight is scattered by the molecules of the air, and
short blue wavelengths are scattered much more than red ones, so blue light reaches us from every part
of the sky. At sunset the light crosses more air, the blue is scattered away, and the sky turns orange.
"""


# Calibration text for choosing the int4 scheme (`choose.py`) when the user gives none: written for
# kdistill, and different from HELD_OUT_TEXT, so the reported KL is not measured on what chose it.
CALIBRATION_TEXT = """\
The train left the valley at dawn. Mist lay over the river, and the fields on either side were still
grey; a farmer walking his dog raised a hand as the carriages went by. By the time the line began to
climb, the sun had reached the upper slopes and the snow there shone so brightly that the passengers
pulled down their blinds.

How to plant a tree: dig a hole twice as wide as the root ball and no deeper. Loosen the roots, set the
tree so that the top of the root ball is level with the ground, fill the hole with the soil you took
out, and water it well. A ring of mulch keeps the soil moist, but keep it away from the trunk.

def count_words(text):
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts

Why do we have seasons? The Earth's axis is tilted, so for half the year one hemisphere leans toward
the Sun and receives more direct light for longer days; that is its summer. Six months later it leans
away, the light arrives at a lower angle, and the days are short and cold.
"""


def kl_per_token(ref_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || other) at T=1, in fp32; zero where ref puts no mass (safe with -inf logits).

    Shapes: ref_logits (B, T, V), other_logits (B, T, V) -> (B, T)
    """
    ref = F.log_softmax(ref_logits.float(), dim=-1)
    other = F.log_softmax(other_logits.float(), dim=-1)
    p = ref.exp()
    return torch.where(p > 0, p * (ref - other), torch.zeros_like(p)).sum(dim=-1)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's saved tensors (parameters and persistent buffers), each storage once."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        return batch["input_ids"], batch.get("attention_mask")
    return batch, None


@torch.no_grad()
def compare_logits(model_ref, model_other, batches) -> dict:
    """Mean/max per-token KL(ref || other), top-1 agreement and max |logit error| over `batches`.

    `batches` holds LongTensors (B, T) or dicts with `input_ids` and an optional `attention_mask`
    (positions with mask 0 are not counted). Zero tokens give zeros, not NaN.
    """
    kl_sum, kl_max, agree, tokens, max_err = 0.0, 0.0, 0, 0, 0.0
    for batch in batches:
        ids, mask = _unpack(batch)
        ref = model_ref(input_ids=ids, attention_mask=mask).logits.float()
        other = model_other(input_ids=ids, attention_mask=mask).logits.float()
        keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        if not keep.any():
            continue
        kl = kl_per_token(ref, other)[keep]
        kl_sum += kl.sum().item()
        kl_max = max(kl_max, kl.max().item())
        agree += (ref.argmax(-1) == other.argmax(-1))[keep].sum().item()
        tokens += int(keep.sum())
        max_err = max(max_err, (ref - other).abs()[keep].max().item())
    return {"kl_mean": kl_sum / max(tokens, 1), "kl_max": kl_max, "top1_agreement": agree / max(tokens, 1),
            "max_abs_logit_error": max_err, "tokens": tokens}


def quant_report(model_fp, model_q, batches) -> dict:
    """`compare_logits` plus weight bytes before/after, bytes saved and the fraction saved."""
    report = compare_logits(model_fp, model_q, batches)
    before, after = weight_bytes(model_fp), weight_bytes(model_q)
    report.update(bytes_before=before, bytes_after=after, bytes_saved=before - after,
                  saved_fraction=(before - after) / before if before else 0.0)
    return report


def load_gguf(path) -> torch.nn.Module:
    """A GGUF file loaded back through transformers' own reader, dequantised to fp32."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' own tqdm bar per tensor
            return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                        trust_remote_code=False).eval()
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: transformers cannot load this GGUF back ({e})") from e


def gguf_report(model_fp, gguf_path, batches) -> dict:
    """Load the GGUF back, compare its logits to the float student; file size and bytes saved vs fp32."""
    report = compare_logits(model_fp, load_gguf(gguf_path), batches)
    before, size = weight_bytes(model_fp), Path(gguf_path).stat().st_size
    report.update(bytes_before=before, bytes_after=size, bytes_saved=before - size,
                  saved_fraction=(before - size) / before if before else 0.0)
    return report


def text_batches(tokenizer, text: str, seq_len: int = 128, max_tokens: int = 2048) -> list[torch.Tensor]:
    """Held-out text as (1, seq_len) LongTensors (the last may be shorter), at most `max_tokens` in all.

    Raises DataError when the text has fewer than two tokens.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise DataError("the held-out text for the KL measurement has fewer than 2 tokens; give a longer "
                        "--data file")
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    return [torch.tensor([chunk]) for chunk in chunks if len(chunk) >= 2]


def read_heldout(path) -> str:
    """The text of a `--data` file (UTF-8); DataError naming the file if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: held-out text file not found; give a UTF-8 .txt file with --data")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{path}: the held-out text file is empty; put a few paragraphs of text in it")
    return text
