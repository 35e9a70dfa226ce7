import re
from pathlib import Path

from mobilekit.cli import support_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_support_table_is_generated_from_the_registries():
    text = README.read_text()
    table = re.search(r"<!-- support-table -->\n(.*)\n<!-- /support-table -->", text, re.S).group(1)
    assert table == support_markdown(), "README support table drifted: paste `mobilekit list --markdown`"


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make test" in (README.parent / ".ci" / "run").read_text()
