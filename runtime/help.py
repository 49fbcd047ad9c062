"""--help layout shared by the training and the evaluation command lines."""
import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """'(default: X)' after each help, except where the parsed default is None: those defaults are
    resolved later (from other flags, or per method) and the help says what they are."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
