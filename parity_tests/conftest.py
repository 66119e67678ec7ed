from parity_tests.helpers import CONTRACT, LARGEST


def pytest_terminal_summary(terminalreporter):
    if not LARGEST:
        return
    terminalreporter.section("parity: largest differences seen (numpy vs torch)")
    for (scope, kind, dtype), (diff, where) in sorted(LARGEST.items()):
        tolerance = CONTRACT[dtype][kind]
        terminalreporter.write_line(
            f"{scope:<8} {kind:<10} {dtype:<8} max abs {diff:9.2e}  (tolerance {tolerance})  at {where}")
