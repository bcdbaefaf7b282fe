"""IP allow and block lists, the runtime store behind them, and (later) auto-ban."""
