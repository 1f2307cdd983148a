"""Hutch: a computer for every AI agent.

    from hutch import Sandbox

    with Sandbox.create() as sandbox:
        print(sandbox.commands.run("echo hello").stdout)
"""

# Other distributions (hutch-proto, hutch-core, ...) add subpackages to this package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
