"""The status store: the single source of truth for every card, attempt and certificate."""
