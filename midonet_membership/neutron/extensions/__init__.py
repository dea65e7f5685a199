"""Neutron's extension manager loads every module of this directory by file path (it is
added to ``api_extensions_path`` by the plugin); the class it looks for is the module's name
capitalised: ``agent_membership.py`` -> ``Agent_membership``."""
