"""The project's own Adam/AdamW, drop-in compatible with torch.optim.Adam/AdamW state."""

from optim.adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
