"""Object storage: where staged parts and finished archives live.

:class:`~jobs.storage.base.ObjectStore` is the seam; :class:`~jobs.storage.s3.S3Store`
speaks S3 through boto3 (AWS, MinIO, moto) and the embedded mode has a local-disk
store of the same shape (:class:`~jobs.storage.local.LocalStore`).
Writes stream through :class:`~jobs.storage.base.ObjectWriter`: S3 multipart with a
bounded number of parts in flight, aborted on failure, so nothing is ever held whole
in memory.

Errors (:mod:`jobs.storage.base`)::

    StorageError            the store failed or could not be reached
     └── ObjectMissing      the key does not exist
"""
