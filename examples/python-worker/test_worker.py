"""Checks the worker's server and queue without touching /workspace."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import worker  # noqa: E402


class WorkerTest(unittest.TestCase):
    def test_each_job_gets_its_sum(self):
        answers = worker.run_jobs([{"id": 1, "numbers": [1, 2]}, {"id": 2, "numbers": [5]}])
        self.assertEqual(answers, [{"job": 1, "sum": 3}, {"job": 2, "sum": 5}])


if __name__ == "__main__":
    unittest.main()
