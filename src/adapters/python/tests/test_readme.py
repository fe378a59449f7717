"""The README's example works when copied verbatim: it is extracted and run as a program."""

import os
import re
import subprocess
import sys
import tempfile
import unittest

from support import require_pthost

ADAPTER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ADAPTER, "README.md")
TOP_README = os.path.join(ADAPTER, "..", "..", "..", "README.md")


def first_python_block(path: str, heading: str) -> str:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def example() -> str:
    return first_python_block(README, "\n## Example")


class Readme(unittest.TestCase):
    def test_the_example_is_ten_lines(self):
        self.assertEqual(len(example().strip().splitlines()), 10)

    def test_the_top_level_readme_shows_the_same_example(self):
        if not os.path.exists(TOP_README):
            self.skipTest("not in the PtHost source tree")
        self.assertEqual(first_python_block(TOP_README, "\n### Python"), example())

    def test_the_example_runs_against_a_real_chain(self):
        require_pthost()
        with tempfile.TemporaryDirectory() as cwd:
            path = os.path.join(cwd, "example.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(example())
            r = subprocess.run([sys.executable, path], cwd=cwd, capture_output=True, timeout=60,
                               stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(r.stdout.decode(), "b'HTTP/1.0 200 OK'\n")


if __name__ == "__main__":
    unittest.main()
