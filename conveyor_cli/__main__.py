from conveyor_cli.main import main

raise SystemExit(main())
