"""The package's own tests, run by the pipeline's test step."""

import unittest

from greet import greet


class GreetTest(unittest.TestCase):
    def test_greets_loudly(self) -> None:
        self.assertEqual(greet("sbx"), "HELLO SBX!")


if __name__ == "__main__":
    unittest.main()
