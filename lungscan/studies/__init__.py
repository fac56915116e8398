"""Whole CT studies of any size: the plan of an upload, the order radiologists read slices in, the batch a worker
classifies, the summary and the DynamoDB store the API pages through (issue 21; docs/api.md "Whole studies")."""
