"""TaskFlow decorators: ``@task.flux2``."""
