"""What several test modules share: builders of files and lakes, servers, processes.

Test modules import from here, never from one another.
"""
