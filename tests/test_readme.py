"""The README's Python examples run as written, in order, in one fresh interpreter."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 4


def test_readme_python_examples_run():
    # A subprocess, because the examples register names in the global registries.
    script = "\n".join(_python_blocks())
    script += "\nprint('reductions', bb.feature_info.reduction())\n"  # the README's last `bb`
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "reductions [4, 8, 16, 32]" in result.stdout


def test_readme_option_table_is_the_option_table():
    # The table is made from BackboneOptions: a new option changes one definition, and
    # this test says the README must be regenerated (options_table_markdown()).
    from backbones.options import options_table_markdown

    assert options_table_markdown() in README.read_text()
