"""The code standard the project holds itself to, checked on the source: small modules with one job and short
functions (about 450 and 60 lines; the slack absorbs a docstring line or two)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "jaxheads"
MODULE_LINES, FUNCTION_LINES = 460, 65


def test_modules_and_functions_stay_small():
    too_long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MODULE_LINES:
            too_long.append(f"{path.relative_to(SRC)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
