"""`make demo` installs only what distilling needs; `make test` adds the test extras."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
TEST_ONLY = ("pytest", "lm-eval", "lm_eval")


def make_variable(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    return re.search(rf"^{name} := (.*)$", text, flags=re.M).group(1)


def recipe(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    return re.search(rf"^{re.escape(target)}:.*?\n((?:\t.*\n)+)", text, flags=re.M).group(1)


def extras_named(install_line: str) -> list[str]:
    found = re.search(r"-e '?\.\[([^\]]*)\]", install_line)
    return found.group(1).split(",") if found else []


def test_demo_installs_no_test_only_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    demo = recipe("$(VENV)/.installed-demo").replace("$(DEMO_INSTALL)", make_variable("DEMO_INSTALL"))
    assert "-e ." in demo
    packages = list(project["dependencies"])
    for extra in extras_named(demo):
        packages += project["optional-dependencies"][extra]
    named = " ".join(packages) + " " + demo
    assert not [p for p in TEST_ONLY if p in named], named
    assert re.search(r"^demo: setup-demo$", (ROOT / "Makefile").read_text(), flags=re.M)


def test_test_target_installs_the_test_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras_named(make_variable("TEST_INSTALL"))
    assert "test" in extras and any("pytest" in p for p in project["optional-dependencies"]["test"])
    assert "$(TEST_INSTALL)" in recipe("$(VENV)/.installed")
    assert re.search(r"^test: setup\b", (ROOT / "Makefile").read_text(), flags=re.M)
