"""The four data sets (loading, normalisation, batching, the batch shuffle) and where MNIST
and Fashion-MNIST come from (download, offline fallbacks, md5 checks).
"""
