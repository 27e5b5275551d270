"""The inventory: models, the port matrix, loading and validation."""

from plasmaboot.inventory.loader import InventoryError, load_inventory, parse_inventory
from plasmaboot.inventory.models import Inventory, Node, normalize_mac
from plasmaboot.inventory.validation import Problem

__all__ = [
    "Inventory",
    "InventoryError",
    "Node",
    "Problem",
    "load_inventory",
    "normalize_mac",
    "parse_inventory",
]
