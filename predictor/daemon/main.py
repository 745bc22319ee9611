"""``predictord`` entry point (the service loop lands with the daemon issue)."""

import sys


def main() -> int:
    """Refuse to pretend: the daemon is not built yet."""
    print("predictord: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
