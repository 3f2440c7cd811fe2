"""Qt item models over core's data; they format cells lazily, only for the rows a view asks about."""

from app.models.next_token_model import NextTokenModel
from app.models.rows_model import RowsModel

__all__ = ["NextTokenModel", "RowsModel"]
