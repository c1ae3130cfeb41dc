from labkit.cli.main import main

raise SystemExit(main())
