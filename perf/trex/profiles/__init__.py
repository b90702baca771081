"""TRex STL profiles: each file is loadable by TRex itself (``start -f``) and by runner.py."""
