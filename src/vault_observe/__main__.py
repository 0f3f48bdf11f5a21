from vault_observe.cli import main

raise SystemExit(main())
