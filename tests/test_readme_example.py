"""The README's loss example (the fused chunked loss from another trainer's compute_loss) runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The first ```python block of README.md that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert found, f"no python block with {marker!r} in README.md"
    return found[0]


def test_readme_loss_example_runs_and_matches_a_plain_reference(capsys):
    torch.manual_seed(0)
    scope = {}
    exec(compile(readme_block("build_objective"), "README.md", "exec"), scope)
    assert "loss " in capsys.readouterr().out
    s_logits = scope["hidden"] @ scope["head_weight"].T
    t_logits = scope["teacher_hidden"] @ scope["teacher_head_weight"].T
    t_logp, s_logp = (t_logits / 2).log_softmax(-1), (s_logits / 2).log_softmax(-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean() * 4  # T^2 scaling at T=2
    ce = torch.nn.functional.cross_entropy(s_logits.reshape(-1, 100), scope["targets"].reshape(-1))
    torch.testing.assert_close(scope["out"].loss, (kl + 0.1 * ce).detach(), rtol=1e-4, atol=1e-4)
    assert scope["hidden"].grad is not None and scope["head_weight"].grad.abs().sum() > 0


def test_readme_api_example_names_what_kdistill_exports():
    import kdistill

    code = readme_block("from kdistill import distill")
    names = re.search(r"from kdistill import (.*)", code).group(1).split(", ")
    assert set(names) <= set(kdistill.__all__)
    for name in names:
        assert getattr(kdistill, name).__doc__
