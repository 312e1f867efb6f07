"""Data: source formats -> canonical records (prompt + N rated responses) -> pairs."""
