"""A loss whose gradient is not coef_p p_j + coef_target [j = t]: it reads z_j itself."""

from gradsmith.derive.row_loss_definition import LossDefinition


def loss(row):
    return -row.log_p(row.t) + row.sum(lambda k: row.z(k) ** 2) / 2


DEFINITION = LossDefinition(name="logit_penalty", title="penalised logits", kind="index",
                            loss=loss)
