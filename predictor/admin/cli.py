"""``predictorctl`` entry point (subcommands land with the admin issue)."""

import sys


def main() -> int:
    """Refuse to pretend: the admin client is not built yet."""
    print("predictorctl: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
