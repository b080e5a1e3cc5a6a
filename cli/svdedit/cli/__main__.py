from svdedit.cli import main

raise SystemExit(main())
