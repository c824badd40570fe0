"""Physical code lines and statements of Python modules.

  python -m benchmarks.code_lines optax_lambc/*.py

A code line is a line covered by a statement, excluding docstrings, comments
and blank lines: a compound statement (``def``, ``class``, ``if``, ``for``,
``with``, ``try``) covers its header lines (decorators and a multi-line
signature included), a simple statement all its lines. This is the count the
CHANGELOG quotes for the library's core.
"""

import ast
import sys


def _is_docstring(node: ast.stmt) -> bool:
  return isinstance(node, ast.Expr) and isinstance(
      node.value, ast.Constant) and isinstance(node.value.value, str)


def count(source: str) -> tuple[int, int]:
  """``(code lines, statements)`` of a module's source."""
  lines = source.splitlines()
  covered: set[int] = set()
  statements = 0

  def visit(body: list[ast.stmt]) -> None:
    nonlocal statements
    for node in body:
      if _is_docstring(node):
        continue
      statements += 1
      blocks = [getattr(node, f) for f in ('body', 'orelse', 'finalbody')
                if getattr(node, f, None)]
      if not blocks:
        covered.update(range(node.lineno, node.end_lineno + 1))
        continue
      start = min([node.lineno] + [d.lineno for d in getattr(
          node, 'decorator_list', [])])
      covered.update(range(start, blocks[0][0].lineno))
      for block in blocks[1:]:  # the 'else:' / 'finally:' line
        covered.add(block[0].lineno - 1)
      for handler in getattr(node, 'handlers', []):
        statements += 1
        covered.update(range(handler.lineno, handler.body[0].lineno))
        visit(handler.body)
      for block in blocks:
        visit(block)

  visit(ast.parse(source).body)
  code = {n for n in covered if lines[n - 1].strip() and
          not lines[n - 1].strip().startswith('#')}
  return len(code), statements


def main(argv: list[str] | None = None) -> tuple[int, int]:
  total = [0, 0]
  for path in sorted(sys.argv[1:] if argv is None else argv):
    with open(path, encoding='utf-8') as f:
      lines, statements = count(f.read())
    total[0] += lines
    total[1] += statements
    print(f'{lines:6d} {statements:6d}  {path}')
  print(f'{total[0]:6d} {total[1]:6d}  total (code lines, statements)')
  return total[0], total[1]


if __name__ == '__main__':
  main()
