from algorithms.remote import admin as remote_admin  # noqa: F401  (RemoteService, RemoteRun)
