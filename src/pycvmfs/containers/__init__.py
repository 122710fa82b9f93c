"""Container images published into a repository (the successor of DUCC and the graphdriver).

Images come from an OCI image layout, a docker-archive tarball or a registry; each run becomes
one transaction: layers under ``.layers``, merged root file systems under ``.flat``, public
names, the podman store, Apptainer files and metadata (see ``docs/containers.md``).
"""
