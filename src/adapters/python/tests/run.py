"""Runs the adapter's tests (python3 -m unittest discovery) and prints the closing line the
top-level test.sh totals: ``Passed!  - Failed: F, Passed: P, Skipped: S, Total: T - pthost (python adapter)``."""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed_ids = set()
    extra = 0
    for test, _ in result.failures + result.errors:
        case = getattr(test, "test_case", test)  # a failed subTest counts its test once
        if isinstance(case, unittest.TestCase) and not type(case).__name__ == "_ErrorHolder":
            failed_ids.add(case.id())
        else:
            extra += 1  # setUpClass/module errors: no test ran
    failed = len(failed_ids) + extra + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    total = result.testsRun + extra
    passed = total - failed - skipped
    word = "Failed!" if failed else "Passed!"
    sys.stdout.flush()
    print(f"{word}  - Failed: {failed}, Passed: {passed}, Skipped: {skipped}, Total: {total} - pthost (python adapter)",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
