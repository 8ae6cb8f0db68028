"""Product rules shared by web views and tasks: who may do what, and what it changes."""
