from xdsd.cli import main

raise SystemExit(main())
