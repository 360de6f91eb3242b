"""The docs render the hook contract: a hook missing from docs/plugins.md, or stale there, fails."""
from pathlib import Path

from fairdefense.hookdoc import BEGIN, END, render_reference
from fairdefense.pluginhost import HOOK_NAMES

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hook_is_documented_in_plugins_md():
    text = (DOCS / "plugins.md").read_text()
    section = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    for hook in HOOK_NAMES:
        assert f"### `{hook}(" in section, f"hook {hook} is not documented in docs/plugins.md"
    assert section.strip() == render_reference().strip(), "regenerate: python -m fairdefense.hookdoc --write docs/plugins.md"


def test_every_hook_appears_in_the_lifecycle_of_index_md():
    text = (DOCS / "index.md").read_text()
    missing = [hook for hook in HOOK_NAMES if f"`{hook}`" not in text and hook not in text]
    assert not missing, f"docs/index.md does not mention {missing}"
