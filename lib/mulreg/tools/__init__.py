"""What a profile would cost (`estimate`) and how fast the engine is (`bench`).
"""
