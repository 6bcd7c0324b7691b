"""`final_hidden` with the 4D mask and position ids of packed rows (data/packing.py `model_inputs`): a row
of one record reads as with the plain padding mask, through a LoRA wrapper too."""
import torch
from helpers import tiny_llama

from kdistill.data.batches import collate
from kdistill.data.packing import model_inputs
from kdistill.models.heads import final_hidden

VOCAB = 300


def test_one_record_per_row_reads_as_with_the_padding_mask():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(VOCAB)
    examples = [{"ids": list(range(5, 5 + n)), "mask": [True] * n} for n in (9, 4, 6)]
    plain = collate(examples, 0)
    packed = collate([{**e, "segments": [0] * len(e["ids"])} for e in examples], 0)
    assert packed["segments"].tolist()[1] == [0, 0, 0, -1, -1, -1, -1, -1]
    for m in (model, get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))):
        with torch.no_grad():
            want = final_hidden(m, plain["input_ids"], plain["attention_mask"])
            got = final_hidden(m, **model_inputs(packed, m))
        real = plain["attention_mask"].bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
