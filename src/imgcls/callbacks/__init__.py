"""Lightning callbacks of the template (beyond the ones Lightning ships)."""
