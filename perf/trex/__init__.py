"""TRex stateless profiles, the NDR/PDR search and its runner (see runner.py)."""
