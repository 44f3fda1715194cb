"""Durable history behind a small interface; see ``roomcast.store.base``."""

from roomcast.store.base import Page, RoomInfo, Store
from roomcast.store.memory import MemoryStore

__all__ = ["MemoryStore", "Page", "RoomInfo", "Store"]
