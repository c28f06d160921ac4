import sys

from arserve_cli.main import main

sys.exit(main())
