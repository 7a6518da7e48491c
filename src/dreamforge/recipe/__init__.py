"""An image's recipe: the A1111-style infotext other tools read and our full JSON recipe."""
