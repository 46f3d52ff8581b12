# Vendored from arcee-ai/DistillKit distillkit/pack_logits.py: only pack_pass and
# _truncate_row, verbatim (the os/click/datasets imports and the CLI are omitted).


def pack_pass(data: dict[str, list], max_len: int) -> dict[str, list]:
    # pack a set of rows into a (hopefully smaller) set of batches
    # truncate rows that are too long
    row_lens = [
        (len(input_ids), idx) for (idx, input_ids) in enumerate(data["input_ids"])
    ]
    row_lens.sort()
    data_out = {key: [] for key in data}
    data_out["attention_mask"] = []

    while row_lens and row_lens[-1][0] >= max_len:
        row_l, idx = row_lens.pop()
        for key in data:
            if key == "attention_mask":
                continue
            data_out[key].append(data[key][idx][:max_len])
            assert len(data_out[key][-1]) == max_len, (
                f"{key} {len(data_out[key][-1])} != {max_len}"
            )
        data_out["attention_mask"].append([1] * max_len)

    if not row_lens:
        return data_out

    # greedily pack remaining rows
    # take longest first then fill with shortest
    row_lens = [row_lens[-1]] + row_lens[:-1]
    current_batch = {key: [] for key in data}
    current_batch_indices = []
    current_batch["attention_mask"] = []
    current_token_count = 0
    current_num_examples = 0
    while row_lens:
        _, idx = row_lens.pop(0)
        space = max_len - current_token_count
        tokens_to_take = min(space, len(data["input_ids"][idx]))
        for key in data:
            if key == "attention_mask":
                continue
            current_batch[key] += data[key][idx][:space]
        current_batch["attention_mask"] += [current_num_examples + 1] * tokens_to_take
        current_batch_indices.append(idx)
        current_token_count += tokens_to_take
        current_num_examples += 1
        if current_token_count >= max_len:
            token_ct = len(current_batch["input_ids"])
            for key in current_batch:
                assert len(current_batch[key]) == token_ct, (
                    f"{key} {len(current_batch[key])} != {token_ct}"
                )
                data_out[key].append(current_batch[key])
            current_batch = {key: [] for key in data}
            current_batch["attention_mask"] = []
            current_batch_indices = []
            current_token_count = 0
            current_num_examples = 0
            if row_lens:
                row_lens = [row_lens[-1]] + row_lens[:-1]
    if current_num_examples > 0:
        for idx in current_batch_indices:
            for key in data:
                if key == "attention_mask":
                    continue
                data_out[key].append(data[key][idx][:max_len])
            data_out["attention_mask"].append([1] * len(data_out["input_ids"][-1]))
    return data_out


def _truncate_row(row):
    res = {}
    if "token_ids" in row:
        expected_len = len(row["token_ids"])
    elif "packed_indices" in row:
        expected_len = len(row["packed_indices"])
    elif "bytepacked_indices" in row:
        expected_len = len(row["bytepacked_indices"])
    else:
        raise ValueError("No token_ids or packed_indices found in row")
    for key in ["input_ids", "labels", "attention_mask"]:
        if key in row:
            res[key] = row[key][:expected_len]
    return res
