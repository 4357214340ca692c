"""Root conftest of the kit's repository: enables pytester for the kit's self-tests in tests/.

(pytest only accepts ``pytest_plugins`` in the root conftest.)
"""
pytest_plugins = ["pytester"]
