"""moto_server, with DynamoDB made safe for a gateway's concurrent workers.

1. moto serves requests on threads, but its DynamoDB backend is not thread-safe: a
   TransactWriteItems that fails restores every table it touched to a copy taken when it
   began, silently undoing the writes other requests made in between (a claim, a commit).
   Real DynamoDB never loses a write and the gateway's correctness rests on that, so
   DynamoDB requests are served one at a time. Other services (SQS long polls) stay
   concurrent.
2. That copy is of the whole table, for every transaction: the cost grows with the table.
   A transaction here journals the items it touches instead and, if it fails, puts back
   just those.
3. A Query lists every item of the table and sorts them all, to keep the few it wants: a
   Query on the table's own key then costs O(n log n) in the table's size. Here it lists
   just its partition, and a Query on a secondary index skips the sort of the whole table
   (it sorts what it keeps by the index's keys anyway), and keeps only the items whose index
   key matches before moto's own, slower, comparison of each. The results are the same.
4. A ReceiveMessage checks each message's retention period by computing all of its queue's
   attributes, which counts the queue's messages: O(n²) in a queue's backlog, so a backlog
   slowed moto down until it could not recover. Here the check reads the period alone.
   SendMessage reads one queue attribute the same way; while it sends, the three message
   counts among the attributes it computes are not counted (it does not use them).
5. The request recorder (used to count requests) appends an entry in two writes from
   whichever thread serves the request, so concurrent entries could share a line; entries
   are written one at a time.
6. werkzeug logs a line per request ("POST / 200": all of DynamoDB and SQS look alike),
   about a tenth of moto's time under load. Warnings and errors are still logged.
7. Routing a request lists moto's package directory (its services) every time: another
   tenth of its time under load. The list is read once.
"""

import copy
import inspect
import logging
import os
import sys
import threading

from moto import backends, server
from moto.dynamodb import models as dynamodb
from moto.dynamodb.models import table as dynamodb_table
from moto.moto_api._internal.recorder import models as recorder
from moto.moto_server import werkzeug_app
from moto.sqs import models as sqs

_dynamodb = threading.Lock()
_dispatch = werkzeug_app.DomainDispatcherApplication.__call__


def _serialized(self, environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with _dynamodb:
            return _dispatch(self, environ, start_response)
    return _dispatch(self, environ, start_response)


werkzeug_app.DomainDispatcherApplication.__call__ = _serialized


class _TablesUncopied:
    """The `copy` module as moto's DynamoDB models see it during a journaled transaction:
    a table "copy" is the table itself (its restore is then a no-op); the rest is copied."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        if isinstance(value, dynamodb.Table):
            return value
        return copy.deepcopy(value, memo)


_transact_write_items = dynamodb.DynamoDBBackend.transact_write_items


def _journaled_transact_write_items(self, transact_items):
    try:
        journal = []
        for entry in transact_items:
            _, op = next(iter(entry.items()))
            table_name = op["TableName"]
            if "Key" in op:
                key = op["Key"]
            else:
                table = self.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            before = self.get_item(table_name, key)
            journal.append((table_name, key, None if before is None else before.to_json()["Attributes"]))
    except Exception:
        # A malformed request: moto's own code reports it.
        return _transact_write_items(self, transact_items)
    dynamodb.copy = _TablesUncopied()
    try:
        return _transact_write_items(self, transact_items)
    except Exception:
        for table_name, key, before in reversed(journal):
            if before is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before)
        raise
    finally:
        dynamodb.copy = copy


dynamodb.DynamoDBBackend.transact_write_items = _journaled_transact_write_items

_query_scope = threading.local()
_table_query = dynamodb_table.Table.query
_table_all_items = dynamodb_table.Table.all_items


_query_signature = inspect.signature(_table_query)


def _scoped_query(self, hash_key, *args, **kwargs):
    # Named or positional: bound as moto's own signature binds it.
    arguments = _query_signature.bind(self, hash_key, *args, **kwargs).arguments
    if arguments.get("index_name"):
        # The index's key equalities, to keep only the items that can match.
        conditions = [(name, value.type, value.value) for name, value in arguments.get("hash_key_conditions") or []]
        _query_scope.scope = ("index", conditions)
    else:
        _query_scope.scope = ("partition", hash_key)
    try:
        return _table_query(self, hash_key, *args, **kwargs)
    finally:
        _query_scope.scope = None


def _scoped_all_items(self):
    scope = getattr(_query_scope, "scope", None)
    if scope is None:
        return _table_all_items(self)
    kind, key = scope
    if kind == "partition":
        # Only this partition's items; moto keeps them under their hash key.
        if key is None or key not in self.items:
            return []
        # Unsorted: a Query on the table's key sorts what it keeps by the range key itself.
        partition = self.items[key]
        return list(partition.values()) if self.range_key_attr else [partition]
    # A Query on an index sorts what it keeps by the index's keys itself. moto compares
    # every item with the index key through DynamoType (about 5 us an item: half a second
    # on a table of 100,000 items); the plain comparison here keeps the same items first.
    if self.range_key_attr:
        items = [item for hash_set in self.items.values() for item in hash_set.values()]
    else:
        items = list(self.items.values())
    for name, kind_of_value, value in key:
        items = [
            item
            for item in items
            if (found := item.attrs.get(name)) is not None and found.value == value and found.type == kind_of_value
        ]
    return items


dynamodb_table.Table.query = _scoped_query
dynamodb_table.Table.all_items = _scoped_all_items


def _retained(self, queue_name, message):
    period = int(self.get_queue(queue_name).message_retention_period)
    return period + message.sent_timestamp / 1000 > sqs.unix_time()


sqs.SQSBackend.is_message_valid_based_on_retention_period = _retained

# How many sends are under way on this thread (a batch sends each of its messages).
_sending = threading.local()


def _uncounted_while_sending(count):
    def get(self):
        return 0 if getattr(_sending, "depth", 0) else count.fget(self)

    return property(get)


for _count in (
    "approximate_number_of_messages",
    "approximate_number_of_messages_delayed",
    "approximate_number_of_messages_not_visible",
):
    setattr(sqs.Queue, _count, _uncounted_while_sending(getattr(sqs.Queue, _count)))


def _sends(method):
    def send(self, *args, **kwargs):
        _sending.depth = getattr(_sending, "depth", 0) + 1
        try:
            return method(self, *args, **kwargs)
        finally:
            _sending.depth -= 1

    return send


sqs.SQSBackend.send_message = _sends(sqs.SQSBackend.send_message)
sqs.SQSBackend.send_message_batch = _sends(sqs.SQSBackend.send_message_batch)

_moto_modules = tuple(backends.list_of_moto_modules())
backends.list_of_moto_modules = lambda: _moto_modules

_recording = threading.Lock()
_record_request = recorder.Recorder._record_request


def _record_one_at_a_time(self, request, body=None):
    with _recording:
        return _record_request(self, request, body)


recorder.Recorder._record_request = _record_one_at_a_time


def _exit_when_parent_goes():
    """The emulator holds our stdin open; EOF means it stopped us or died (even by SIGKILL)."""
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    if os.environ.get("HANDOFF_EXIT_WITH_PARENT") == "1":
        threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sys.exit(server.main(sys.argv[1:]))
