"""oms-cleanup: asynchronous bulk cleanup of Huawei Cloud OMS migration tasks."""

__version__ = "0.1.0"
